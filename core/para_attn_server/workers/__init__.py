"""The server's side of the ranks: worker groups, their control links and frame reader, how a
rank's report becomes a job's outcome, and the executor contract that starts ranks."""

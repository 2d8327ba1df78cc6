"""What the server keeps on disk: confined, durable output files, their writer thread, and
the journal of job records. Runs in the server process."""

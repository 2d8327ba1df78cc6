"""The job service and what drives it: records, queue, dispatcher, supervisor, saver, observers.
Runs in the server process only; knows no process, socket or HTTP request."""

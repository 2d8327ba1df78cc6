"""Several hosts, one group: the join spec, the rendezvous the server hosts, the ``join``
command and its route. Runs in the server process, and in ``join`` on a joining host."""

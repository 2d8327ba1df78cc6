"""The rank process: set up the predictor, run each job in lockstep with its peers, decide
every step together, send previews. Never imports the server side (engine, http, storage)."""

"""First-party plugins that ship with para-attn-server (executors and friends)."""

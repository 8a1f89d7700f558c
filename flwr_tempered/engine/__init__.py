"""The batched engine: every node of a run as rows of one ``[N, d]`` tensor, stepped as
one computation (batched local steps, batched rules and attacks, per-node fallback)."""

"""The agent: per-turn prompts and the batched multi-turn rollout."""

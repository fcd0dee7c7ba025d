"""The reinforcement-learning telescope scheduler: a batched environment over the telescope simulator (env),
a target-scoring Q-network (network), double DQN with n-step returns and CQL (agent, offline), checkpoints,
baseline scorers (greedy, feature-based), evaluation over held-out nights, and the campaign policies
(policy: kinds rl, greedy, feature)."""

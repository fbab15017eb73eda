"""The box's own personalization policy: when a device trains by itself (``[personalize]`` in agent.toml, or the
fleet's ``policy`` verb).

``spec`` declares the policy's settings once (config, verb and docs read it); ``sample_set`` counts the data set's
samples by content hash and keeps it within its caps; ``decision`` says whether a run may start now and, if not,
what it waits for; ``runner`` is the agent's side: it checks periodically and when data arrives, and queues an
ordinary job.
"""

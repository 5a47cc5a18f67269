"""verl-reflect: Reflect, Retry, Reward (Bensal et al., 2025) as a verl 0.9.1 plugin.

``verl_reflect.register`` registers the ``reflect_retry`` agent loop and the ``reflect_grpo``
advantage estimator; this package itself imports nothing heavy.
"""

__version__ = "0.1.0"

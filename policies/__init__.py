"""The rules: the policy document schema, the default policy and the evaluator.

Every decision names the rule that made it and the policy version, so it can be audited.
"""

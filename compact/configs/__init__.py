"""Training configurations that ship with compact (YAML, the keys of ``compact train --config``).

``compact train --config paper-cifar`` names one of them; ``compact configs`` lists them.
"""

"""Config: the structured schema, composing the config tree, checks on the command line, printing the config.

    schema    dataclasses registered in Hydra's ConfigStore (types checked at composition)
    compose   ``compose(overrides)``: the same config ``run.py`` composes; ``to_plain`` for plain containers
    cli       checks made before Hydra composes (an unknown group, option or task gets the closest match)
    printing  the resolved config as a tree, and its copies in the run directory
"""

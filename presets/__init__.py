"""The built-in presets of ``retune train --preset NAME``, one YAML file each.

This folder is the repository's ``presets/``; setuptools installs it as the package
``retune_cli.presets`` (see ``[tool.setuptools] package-dir`` in pyproject.toml), so
``retune_cli.config.preset_dir()`` finds the files in wheels and editable installs alike.
"""

"""openmme's stand-ins for ``sagemaker_xgboost_container`` and ``sagemaker_containers``.

See ``openmme.handlers._compat`` for what they provide and why. This directory itself, not this package, goes
on a script worker's ``sys.path`` (last), so that its packages import under their own names; it is a package
only so that it is installed with openmme.
"""

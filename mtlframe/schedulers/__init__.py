"""Learning-rate schedules (component kind ``scheduler``, recipe key ``optimizer.scheduler``).

See :mod:`mtlframe.schedulers.base` for the contract and ``docs/resume.md`` for a tutorial.
"""

"""The clinical workflows on the exchange, one module each; ``mount`` puts them on the exchange app.

Each workflow is a catalog app of the same name (docs/apps/): ``insurance-card``,
``exam-mutual-recognition``, ``referrals``, ``appointments`` and ``remote-consultation``. They use the
exchange's own caller identity, decision point, audit, patient blind index, errors and migrations.
"""

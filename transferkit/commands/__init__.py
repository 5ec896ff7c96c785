"""The pieces behind ``transferkit``'s command line (:mod:`transferkit.cli` is the entry point).

* :mod:`~transferkit.commands.parser` -- the argparse definitions of ``finetune`` and ``inspect``, and
  ``finetune``'s defaults;
* :mod:`~transferkit.commands.config` -- configuration layers (defaults < a resumed run's ``args.yaml`` <
  ``--config`` < the command line) and their validation;
* :mod:`~transferkit.commands.plan` -- turning a validated configuration into data, a freeze plan, an LR
  schedule and a run folder, without writing anything;
* :mod:`~transferkit.commands.run_folder` -- starting a run in its folder: claimed, the replaced run set
  aside until the first checkpoint, undone on failure;
* :mod:`~transferkit.commands.finetune` -- the ``finetune`` job: prepare, train, export, report;
* :mod:`~transferkit.commands.inspect_cmd` -- the ``inspect`` command;
* :mod:`~transferkit.commands.console` -- the only place that prints: rank 0, deferred logs, one-line errors.
"""

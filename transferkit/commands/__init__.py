"""The pieces behind ``transferkit``'s command line (:mod:`transferkit.cli` is the entry point).

* :mod:`~transferkit.commands.parser` -- the argparse definitions of ``finetune`` and ``inspect``, and
  ``finetune``'s defaults;
* :mod:`~transferkit.commands.flags` -- API parameter -> flag: library text in the command line's words;
* :mod:`~transferkit.commands.finetune` -- ``finetune``: flags -> options -> :func:`transferkit.run.runner.run`
  -> the console (the job itself is :mod:`transferkit.run`'s);
* :mod:`~transferkit.commands.inspect_cmd` -- the ``inspect`` command;
* :mod:`~transferkit.commands.console` -- the only place that prints: rank 0, deferred logs, one-line errors.
"""

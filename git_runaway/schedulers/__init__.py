"""How a run is started and watched on its host.

`direct` runs (the default) hold an ssh session open while the script runs: the host program
of `remote.run` streams the output and sends back the results. A profile with `sbatch:`
hands its runs to Slurm instead (`slurm`): runaway submits them as one job array, polls the
scheduler, and collects each run's results once its job is over, from any later session.
Both give the same `Outcome`; `execution.Runaway.run` picks one by the profile.
"""

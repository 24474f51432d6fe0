"""Running a recipe: Beam options and where it runs (options), the one runner (execute), the run check (check),
the local worker watchdog (watchdog), dry runs (dryrun), and the demo web (demoweb); what a run reports is
manifests/funnel.py.

Nothing is imported here, so that a module of this package loads only what it needs."""

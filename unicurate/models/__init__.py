"""Models: the zoo (``zoo``: which models, where their weights come from), weight resolution and caches
(``resolver``), how models run in a process (``runtime.Runtime``), one handler per model and ``load_models``
(``handlers``), the curate filters' loaders (``loaders``) and the tiny profile's builders (``tiny``)."""

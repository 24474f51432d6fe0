"""The Beam graphs: curate and synthesize (one ``common.Pipeline`` each, run by ``unicurate.run.execute``), the
model stage (score), the per-worker-process plumbing of the DoFns (perworker) and the transforms both graphs share
(common). Every module here is a Beam graph module; the plain code they wrap lives in filters/, synthesis/,
models/, download/ and manifests/."""

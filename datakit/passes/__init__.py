"""The global passes over every video's output, in the driver, on Arrow tables: track gates, identities
across videos, reference views, training samples; :mod:`datakit.passes.runner` runs them in order."""

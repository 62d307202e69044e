"""Tools over a finished run: identity query and its vector index, photo embedding, the HTML report,
identity-disjoint splits and the leakage check."""

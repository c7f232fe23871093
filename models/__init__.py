"""The models, in three wings that do not import each other: `recs` (product lists),
`engagement` (channel and send time) and `decisions` (profiles, uplift, contact policy,
next-best-action). Shared by all three: `base` (scorer base class, top-k, ids, saved-folder
metadata), `fitting` (the fit backend the caller hands in, and shared cores) and `catalog` (every
registered model, named once)."""

"""Network edges: the outbound address policy, bounded fetches, slots, per-source rate buckets."""

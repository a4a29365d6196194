"""Experiments that orchestrate several runs: `chunklm compare` (same bytes, same budget, matched FLOPs)."""

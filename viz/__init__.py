"""Plotting for hgadapter runs: only reads arrays and files that runs saved."""

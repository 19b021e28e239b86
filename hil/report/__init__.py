"""What both papers' reports share: provenance (date, software, commit, station, device
parameters, seeds), accuracies with Wilson 95 % intervals and the comparisons they allow,
figures saved as 300 dpi PNG plus SVG, methods-paragraph helpers, the HTML page with the
figures inline, and the summary of a multi-seed run."""

"""Stage 1, what every stage reads and writes: atomic files, locks, data discovery, images, figures, seeded draws."""

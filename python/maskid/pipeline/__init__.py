"""The pipeline: `recognizer.Recognizer` runs find faces -> describe -> match over a gallery,
with its stages injectable; `masks` draws the synthetic masks enrollment adds."""

"""Cold start of the transformers pipeline: import, load, answer one question (run as a fresh process)."""
import sys

from transformers import pipeline

qa = pipeline("question-answering", model=sys.argv[1], device="cpu")
print(qa(question="Who won?", context="Marie Curie won the Nobel Prize in 1903.")["answer"])

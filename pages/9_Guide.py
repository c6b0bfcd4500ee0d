"""Guide: how to read the results, in plain words, for people who don't code."""
import streamlit as st

import ui

ui.page("Guide", ":material/menu_book:")

st.title("How to read the results")
st.markdown("""
### The idea in one paragraph
We give the model two almost identical prompts. In the **clean** one it gives the answer we care
about ("…Mary gave a bottle of milk to" → *John*). In the **corrupted** one a single detail is
changed, and the right answer changes with it ("…John gave a bottle of milk to" → *Mary*). Then we
run the model on one prompt while copying a small piece of its inner workings from the other run,
and watch whether the answer moves. Each square of the heatmap is one such experiment.

### The numbers in the squares
The **normalised score** puts every square on the same scale:

- **1** (deep red) – copying this piece alone gives the full clean behaviour: the piece carries the
  information the model needs.
- **around 0** (white) – copying this piece changes nothing: on its own it does not matter for this
  question.
- **between 0 and 1** – the piece carries part of the information; others share the work.
- **negative** (blue) – copying this piece pushes the model further towards the *other* answer. Some
  parts of a model work against the answer it finally gives.
- **above 1** – the piece makes the model even more sure of the clean answer than the clean run was.

"Raw metric" shows the model's own measurement instead (by default the *logit difference*: how much
more the model prefers the right name to the wrong one; positive means it prefers the right one).

### Bands and clusters
- A **vertical band** at one word means the information sits at that word's position over several
  layers.
- A band that **moves** from an early word (say, the name) to the last word as you go up the layers
  shows information being **carried along** the sentence – attention heads moving it.
- A few **isolated squares** point to a small number of important parts, often attention heads;
  switch to the "Attention heads" views to see which.
- Colour **everywhere** or **nowhere** usually means the question is too easy, too hard, or that the
  two prompts do not really change the answer – check the Baseline on the Prompts page.

### Denoising versus noising
- **Denoising** (the default) copies from the clean run into the corrupted run. A high score says:
  *this piece is enough to bring the clean answer back*.
- **Noising** copies from the corrupted run into the clean run. A low score says: *the model needs
  this piece; breaking it destroys the clean answer*.

The two can disagree: a piece can be needed without being enough on its own (others must help), or
be enough while the model has a backup for it.

### Why "whole layer" results are always about 1
The residual stream is the model's running notes – everything it has worked out so far, at every
word. If we copy *all* of it at one layer, every layer after that sees exactly the clean notes, so
the clean answer comes back no matter which layer we chose. That is why the "Residual stream, whole
layer" sweep shows about 1 everywhere (when denoising) and tells us little. Patching **one word at a
time** (layer × position) is what shows *where* the information sits.

### A few cautions
- A result describes this model on this pair of prompts. Try several pairs before trusting a story.
- Small models are noisy; a score of 0.15 is rarely worth a conclusion.
- The corrupted prompt must have exactly as many tokens as the clean one, so that positions line
  up; the Prompts page checks this for you.
""")
c = st.columns(3)
c[0].page_link("dashboard.py", label="Back to the demo", icon=":material/home:")
c[1].page_link("pages/2_Prompts.py", label="Try your own prompts", icon=":material/edit_note:")
c[2].page_link("pages/3_Patching.py", label="Patching", icon=":material/grid_on:")

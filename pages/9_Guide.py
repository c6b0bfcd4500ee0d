"""Guide: how to read the results, in plain words, for people who don't code."""
import streamlit as st

import ui

ui.page("Guide")

st.title("How to read the results")
st.markdown("""
### The idea in one paragraph
We give the model two almost identical prompts. In the **clean** one it gives the answer we care
about ("…Mary gave a bottle of milk to" → *John*). In the **corrupted** one a single detail is
changed, and the right answer changes with it ("…John gave a bottle of milk to" → *Mary*). Then we
run the model on one prompt while copying a small piece of its inner workings from the other run,
and watch whether the answer moves. Each square of the heatmap is one such experiment.

### The numbers in the squares
Every square answers the same question: **how much of the clean behaviour did this one piece
move?** With denoising (the default) that is the share it *restores*; with noising, the share it
*destroys*. Either way the squares that matter are the strong red ones:

- **1** (deep red) – this piece alone moves all of the clean behaviour: denoising brings the clean
  answer fully back; noising (corrupting it) destroys it completely, so the model needs it.
- **around 0** (white) – this piece changes nothing: on its own it does not matter for this
  question.
- **between 0 and 1** – the piece carries part of the information; others share the work.
- **negative** (blue) – the patch moves the other way: denoising pushes the model further towards
  the *other* answer; noising (corrupting the piece) makes the clean answer even *stronger*. Some
  parts of a model work against the answer it finally gives.
- **above 1** – the patch overshoots: more than the whole gap between the two prompts.

The cell you click says the same in words ("Corrupting this destroys 87% of the clean behaviour:
the model needs it"), and the summary under the chart uses the same numbers. (The *normalised
score* behind it is 1 for the clean behaviour and 0 for the corrupted one; noising shows 1 minus
that score. Hover a square to see both.)

"Raw metric" shows the model's own measurement instead (by default the *logit difference*: how much
more the model prefers the right name to the wrong one; positive means it prefers the right one).
Its colours are centred on the run the patch starts from (the corrupted run when denoising, the
clean run when noising): white is "no change", and a pale square really is a small change.

### Bands and clusters
- A **vertical band** at one word means the information sits at that word's position over several
  layers.
- A band that **moves** from an early word (say, the name) to the last word as you go up the layers
  shows information being **carried along** the sentence – attention heads moving it.
- A few **isolated squares** point to a small number of important parts, often attention heads;
  switch to the "Attention heads" views to see which, and open "Where the heads look" under a
  head result to see which words those heads attend to.
- Colour **everywhere** or **nowhere** usually means the question is too easy, too hard, or that the
  two prompts do not really change the answer – check the Baseline on the Prompts page.

### Denoising versus noising
- **Denoising** (the default) copies from the clean run into the corrupted run. A high number says:
  *this piece is enough to bring the clean answer back*.
- **Noising** copies from the corrupted run into the clean run. A high number (the share
  destroyed) says: *the model needs this piece; breaking it destroys the clean answer*.

The two can disagree: a piece can be needed without being enough on its own (others must help), or
be enough while the model has a backup for it. The Datasets page runs both and sorts every piece
into these four cases.

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
ui.link("dashboard.py", "Back to the demo", where=c[0])
ui.link("pages/2_Prompts.py", "Try your own prompts", where=c[1])
ui.link("pages/3_Patching.py", where=c[2])

"""Looking inside: capture what every head does, score heads, draw the lecture's pictures, write the page.

    capture   ``capture_attention(model)``: every head's q, k, v, scores, mask, pattern and update
    heads     scoring heads against named patterns (adjective -> noun, previous token, induction, ...)
    plots     the pictures (matplotlib ``Figure`` objects; no backend is chosen here)
    page      the self-contained HTML page (its HTML, CSS and JavaScript are files under assets/)
    pictures  every picture of one phrase at once (what ``task=attend`` writes)

Nothing here imports Lightning.
"""

"""Editor support for `.sdx` recipes: the TextMate grammar and the language server (`sdxlc lsp`).

`words` gathers the recipe words from the compiler's own tables (the vocabulary, the recipe schema's
allowed values, the hardware profiles); `textmate` generates the grammar from them and from the lexical
shapes of sdxlc/lang/grammar/sdx.lark; `text` reads positions in a document; `features` answers
diagnostics, completion and hover; `server` is the pygls server.

May import any stage of the compiler, never torch. Only `features` and `server` import lsprotocol and
pygls, and only the `lsp` command imports them, so the other commands start without them.
"""

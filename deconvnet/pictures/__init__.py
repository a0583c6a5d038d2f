"""Pictures: reconstructions as images (:mod:`.image`), the paper's figures (:mod:`.figures`)
and the unit atlas as a static site (:mod:`.site`). Functions return PIL images or write files;
nothing prints."""

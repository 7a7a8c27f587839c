"""Mail itself: the header splitter (``headers``), header rewriting, unsubscribe links, DKIM key
material, header text."""

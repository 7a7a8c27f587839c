"""Mail itself: header rewriting and splitting, unsubscribe links, DKIM key material, header text."""

"""Where bytes and vectors live: a content-addressed artifact store and LanceDB tables."""

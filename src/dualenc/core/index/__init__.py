"""FAISS indices of code: corpus, index folder, build, tuning (searching is ``dualenc.retriever``)."""

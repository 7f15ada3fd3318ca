"""The servers editors talk to: http.py (`autocoder serve`: OpenAI's and llama.cpp's HTTP protocols),
lsp.py (`autocoder lsp`: a language server over stdio), and jobs.py, what both run generations with."""

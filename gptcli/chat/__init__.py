"""Conversations for fine-tuning and chat: their formats, and the one chat template renderer.

formats.py   records (messages, ShareGPT, Alpaca, prompt/completion) -> checked conversations;
             read_conversations reads them from files through gptcli.data
template.py  ChatTemplate (ChatML or a Hugging Face Jinja file) and render(): a conversation ->
             ids and the mask of trained tokens, the same for training, chat, serving and export
show.py      what `gpt data show` prints: the rendered text with its trained stretches marked
"""

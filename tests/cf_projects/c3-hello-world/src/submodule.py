def get_hello_message():
    return "Hello World!"
def parse(expr):
    raise NotImplementedError


foobar


kv¢alice¨
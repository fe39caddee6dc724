//! Request checks done before a request is proposed, as etcd's v3rpc layer
//! does them (`checkPutRequest`, `checkTxnRequest`, ...).

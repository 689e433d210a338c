use super::*;

#[test]
fn builds_containers_and_scalars() {
    // pickle.dumps({"a": [1, -2, 300, 70000, 2**40, -(2**40)], "b": (1.5, None, True)}, 2)
    let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\xffeX\x01\x00\x00\x00bq\x03G?\xf8\x00\x00\x00\x00\x00\x00N\x88\x87q\x04u.";
    let want = Value::Dict(vec![
        (
            Value::Str("a".into()),
            Value::List(
                [1, -2, 300, 70000, 1 << 40, -(1 << 40)]
                    .map(Value::Int)
                    .to_vec(),
            ),
        ),
        (
            Value::Str("b".into()),
            Value::Tuple(vec![Value::Float(1.5), Value::None, Value::Bool(true)]),
        ),
    ]);
    assert_eq!(unpickle(data), Ok(want));
}

#[test]
fn protocol_4_framing_and_memoize() {
    // pickle.dumps(["x", "x"], 4): the second "x" is a memo reference.
    let data = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x01x\x94h\x01e.";
    let x = Value::Str("x".into());
    assert_eq!(unpickle(data), Ok(Value::List(vec![x.clone(), x])));
}

#[test]
fn refuses_disallowed_globals_without_calling_them() {
    // pickle.dumps of an object whose __reduce__ is (os.system, ("echo pwned",)).
    let data = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
    assert_eq!(
        unpickle(data),
        Err(PickleError::DisallowedGlobal("posix.system".into()))
    );
    let data = b"\x80\x04\x8c\x05torch\x8c\x04load\x93.";
    assert_eq!(
        unpickle(data),
        Err(PickleError::DisallowedGlobal("torch.load".into()))
    );
}

#[test]
fn truncated_and_malformed_streams_are_errors() {
    assert_eq!(
        unpickle(b"\x80\x02]q\x00(K\x01"),
        Err(PickleError::Truncated(8))
    );
    assert_eq!(
        unpickle(b"X\xff\xff\xff\xffab"),
        Err(PickleError::Truncated(7))
    );
    assert_eq!(
        unpickle(b"\x80\x02\xff."),
        Err(PickleError::Opcode {
            opcode: 0xff,
            at: 2
        })
    );
    assert!(matches!(
        unpickle(b"\x80\x02."),
        Err(PickleError::Malformed { at: 2, .. })
    ));
    assert!(matches!(
        unpickle(b"(K\x01s."),
        Err(PickleError::Malformed { at: 3, .. })
    ));
    assert!(matches!(
        unpickle(b"K\x01h\x07."),
        Err(PickleError::Malformed { at: 2, .. })
    ));
    // BUILD on something that is not an OrderedDict.
    assert!(matches!(
        unpickle(b"K\x01}b."),
        Err(PickleError::Malformed { at: 3, .. })
    ));
}

#[test]
fn refuses_memo_references_to_containers() {
    // A dict memoised empty, filled, then referenced: a copy would be stale.
    let data = b"}q\x00X\x01\x00\x00\x00aK\x01s0h\x00.";
    assert!(matches!(
        unpickle(data),
        Err(PickleError::Malformed { at: 13, .. })
    ));
}

package main

// dockercoins.v1.Rng/Generate on the wire, without generated code: the two
// messages are encoded by hand (protowire) and travel as []byte through
// rawCodec, a pass-through codec forced on both sides.

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const (
	rngService     = "dockercoins.v1.Rng"
	generateMethod = "/dockercoins.v1.Rng/Generate"
	// 1 <= size <= 1 MiB, as proto/dockercoins/v1/rng.proto says.
	maxSize = 1 << 20
)

// rawCodec passes []byte (or *[]byte) through untouched, so that hand-encoded
// messages go on the wire as they are. Anything else is a proto.Message
// (the health service on the same server) and is marshalled as protobuf.
// Its name, "proto", makes the content-type application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	case proto.Message:
		return proto.Marshal(m)
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *[]byte:
		// grpc-go reuses data's buffer once this returns: keep a copy.
		*m = append([]byte(nil), data...)
		return nil
	case proto.Message:
		return proto.Unmarshal(data, m)
	}
	return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
}

// encodeGenerateRequest: GenerateRequest{uint32 size = 1}.
func encodeGenerateRequest(size uint32) []byte {
	var b []byte
	if size != 0 { // proto3: a zero scalar is not on the wire
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(size))
	}
	return b
}

// decodeGenerateRequest reads GenerateRequest's size, skipping unknown fields.
func decodeGenerateRequest(b []byte) (uint32, error) {
	var size uint32
	err := walkFields(b, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		if num != 1 {
			return protowire.ConsumeFieldValue(num, typ, v), nil
		}
		if typ != protowire.VarintType {
			return 0, fmt.Errorf("GenerateRequest.size: wire type %d, want varint", typ)
		}
		x, n := protowire.ConsumeVarint(v)
		size = uint32(x) // a uint32 field keeps the low 32 bits, as protobuf does
		return n, nil
	})
	return size, err
}

// encodeGenerateResponse: GenerateResponse{bytes data = 1}.
func encodeGenerateResponse(data []byte) []byte {
	if len(data) == 0 {
		return nil
	}
	b := make([]byte, 0, len(data)+1+protowire.SizeVarint(uint64(len(data))))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendBytes(b, data)
}

// decodeGenerateResponse reads GenerateResponse's data (the last occurrence
// wins, as protobuf says for a repeated scalar field), skipping unknown fields.
func decodeGenerateResponse(b []byte) ([]byte, error) {
	var data []byte
	err := walkFields(b, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		if num != 1 {
			return protowire.ConsumeFieldValue(num, typ, v), nil
		}
		if typ != protowire.BytesType {
			return 0, fmt.Errorf("GenerateResponse.data: wire type %d, want bytes", typ)
		}
		x, n := protowire.ConsumeBytes(v)
		data = x
		return n, nil
	})
	return data, err
}

// walkFields calls field for each field of b with the bytes after its tag;
// field returns how many of them the value took (negative: malformed).
func walkFields(b []byte, field func(protowire.Number, protowire.Type, []byte) (int, error)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("malformed tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		m, err := field(num, typ, b)
		if err != nil {
			return err
		}
		if m < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(m))
		}
		b = b[m:]
	}
	return nil
}

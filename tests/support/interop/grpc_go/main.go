// A gRPC client on grpc-go (the implementation behind Kubernetes' gRPC probes) for the
// interoperability tests: it reads calls as JSON on stdin, makes them in turn on one
// connection with raw bytes (no generated code), and prints their outcomes as JSON.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte{}, data...)
	return nil
}
func (raw) Name() string { return "raw" }

type call struct {
	Path       string            `json:"path"`
	Kind       string            `json:"kind"` // unary, server_stream, bidi
	Messages   []string          `json:"messages"`
	MaxAnswers int               `json:"max_answers"`
	TimeoutMs  int               `json:"timeout_ms"`
	Metadata   map[string]string `json:"metadata"`
}

type outcome struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Answers []string `json:"answers"`
}

func run(conn *grpc.ClientConn, c call) outcome {
	timeout := time.Duration(c.TimeoutMs) * time.Millisecond
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for k, v := range c.Metadata {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	var messages [][]byte
	for _, m := range c.Messages {
		b, _ := hex.DecodeString(m)
		messages = append(messages, b)
	}
	out := outcome{Answers: []string{}}
	codec := grpc.CallContentSubtype("raw")
	if c.Kind == "unary" {
		var answer []byte
		err := conn.Invoke(ctx, c.Path, &messages[0], &answer, codec)
		if err == nil {
			out.Answers = append(out.Answers, hex.EncodeToString(answer))
		}
		s := status.Convert(err)
		out.Code, out.Message = s.Code().String(), s.Message()
		return out
	}
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: c.Kind == "bidi"}
	stream, err := conn.NewStream(ctx, desc, c.Path, codec)
	if err == nil {
		for i := range messages {
			if err = stream.SendMsg(&messages[i]); err != nil {
				break
			}
		}
		if err == nil || err == io.EOF {
			err = stream.CloseSend()
		}
		for err == nil {
			var answer []byte
			if err = stream.RecvMsg(&answer); err == nil {
				out.Answers = append(out.Answers, hex.EncodeToString(answer))
				if c.MaxAnswers > 0 && len(out.Answers) >= c.MaxAnswers {
					cancel() // the next read reports the cancellation
				}
			}
		}
		if err == io.EOF {
			err = nil
		}
	}
	s := status.Convert(err)
	out.Code, out.Message = s.Code().String(), s.Message()
	return out
}

func main() {
	encoding.RegisterCodec(raw{})
	var calls []call
	if err := json.NewDecoder(os.Stdin).Decode(&calls); err != nil {
		fmt.Fprintln(os.Stderr, "calls:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	outcomes := []outcome{}
	for _, c := range calls {
		outcomes = append(outcomes, run(conn, c))
	}
	json.NewEncoder(os.Stdout).Encode(outcomes)
}

// Canonical Huffman decoding for graphopt.codec.huffman (the .gcm streams): the sequential part
// of the decoder. Python builds the lookup tables from the code lengths (table[prefix] =
// symbol + 1 and its code length, for every `width`-bit prefix of a code); this loop walks the
// bitstream, most significant bit first, with the same checks and messages as the Python
// reference decoder (HuffmanCode.decode_python).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace graphopt {
namespace {

// `width` bits of `data` from bit `pos` (bits past the end read as 0).
inline uint32_t peek(const uint8_t* data, int64_t nbytes, int64_t pos, int width) {
    const int64_t byte = pos >> 3;
    uint32_t word = 0;
    for (int i = 0; i < 4; ++i) {
        word <<= 8;
        if (byte + i < nbytes) word |= data[byte + i];
    }
    word <<= (pos & 7);
    return word >> (32 - width);
}

using Table = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::array_t<int64_t> huffman_decode(py::bytes stream, Table table_symbol, Table table_length,
                                    int width, int64_t count, int64_t bit_count) {
    const std::string_view view(stream);
    const auto* data = reinterpret_cast<const uint8_t*>(view.data());
    const int64_t nbytes = static_cast<int64_t>(view.size());
    if (width < 1 || width > 24) throw std::invalid_argument("Huffman stream: width out of range");
    if (table_symbol.ndim() != 1 || table_length.ndim() != 1 ||
        table_symbol.shape(0) != (int64_t{1} << width) ||
        table_length.shape(0) != (int64_t{1} << width)) {
        throw std::invalid_argument("Huffman stream: lookup tables do not match the width");
    }
    if (count < 0 || bit_count < 0 || bit_count > nbytes * 8) {
        throw std::invalid_argument("Huffman stream: " + std::to_string(bit_count) +
                                    " bits announced, " + std::to_string(nbytes * 8) +
                                    " present (truncated)");
    }
    if (count > bit_count) {  // every code takes at least one bit: refused before allocating
        throw std::invalid_argument("Huffman stream ends after fewer than " +
                                    std::to_string(count) + " symbols (truncated)");
    }
    py::array_t<int64_t> out(count);
    int64_t* dst = out.mutable_data();
    const int64_t* sym = table_symbol.data();
    const int64_t* len = table_length.data();
    int64_t pos = 0;
    for (int64_t i = 0; i < count; ++i) {
        if (pos >= bit_count) {
            throw std::invalid_argument("Huffman stream ends after " + std::to_string(i) +
                                        " of " + std::to_string(count) +
                                        " symbols (truncated)");
        }
        const uint32_t window = peek(data, nbytes, pos, width);
        const int64_t symbol = sym[window], length = len[window];
        if (symbol == 0 || length < 1 || pos + length > bit_count) {
            throw std::invalid_argument("Huffman stream: no code at bit " + std::to_string(pos) +
                                        " (corrupt)");
        }
        dst[i] = symbol - 1;
        pos += length;
    }
    if (pos != bit_count) {
        throw std::invalid_argument("Huffman stream: " + std::to_string(bit_count - pos) +
                                    " bits left after " + std::to_string(count) +
                                    " symbols (corrupt)");
    }
    return out;
}

}  // namespace

void register_huffman(py::module_& m) {
    m.def("huffman_decode", &huffman_decode, py::arg("stream"), py::arg("table_symbol"),
          py::arg("table_length"), py::arg("width"), py::arg("count"), py::arg("bit_count"),
          "Decode `count` canonical Huffman symbols from the first `bit_count` bits of `stream` "
          "with the prefix tables of graphopt.codec.huffman (raises ValueError on a truncated or "
          "corrupt stream).");
}

}  // namespace graphopt

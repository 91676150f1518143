/*
 * A minimal VSCard client for the tests of vpcd's protocol=vscard.
 *
 * It does what libcacard's vscclient does with
 *   vscclient -e "db=... use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)" HOST PORT
 * in a single thread: emulate a CAC card from three certificates of an NSS database,
 * connect to the VSCard host (our driver), send Init, wait for the host's Init, clear
 * reader 0 the way vscclient does, add the emulated reader, insert its card (ATR) and
 * answer every APDU with libcacard's response. Unlike vscclient it bounds every read
 * by the length it has room for, and it exits when the host closes the connection.
 *
 * Usage: cac_client NSSDB_DIR HOST PORT
 * Build: gcc cac_client.c $(pkg-config --cflags --libs libcacard)
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libcacard.h>

#define MAX_MSG 65548
#define MAX_ATR 40

static int sock = -1;

static void die(const char *what)
{
    fprintf(stderr, "cac_client: %s\n", what);
    exit(2);
}

static void write_all(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = send(sock, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("send failed");
        p += n;
        len -= (size_t)n;
    }
}

static void send_msg(uint32_t type, uint32_t reader_id, const void *payload, uint32_t len)
{
    uint32_t header[3] = { htonl(type), htonl(reader_id), htonl(len) };
    write_all(header, sizeof(header));
    if (len > 0)
        write_all(payload, len);
    printf("sent type %u reader %u length %u\n", type, reader_id, len);
    fflush(stdout);
}

/* Reads exactly len bytes; returns 0 at a clean end of stream before any byte. */
static int read_all(void *buf, size_t len)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(sock, p + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 && got == 0)
            return 0;
        if (n <= 0)
            die("connection lost in the middle of a message");
        got += (size_t)n;
    }
    return 1;
}

static uint32_t msg_type, msg_reader, msg_len;
static unsigned char msg[MAX_MSG];

/* Receives one message into msg_*; returns 0 when the host closed the connection. */
static int recv_msg(void)
{
    uint32_t header[3];
    if (!read_all(header, sizeof(header)))
        return 0;
    msg_type = ntohl(header[0]);
    msg_reader = ntohl(header[1]);
    msg_len = ntohl(header[2]);
    if (msg_len > sizeof(msg))
        die("message too long");
    if (msg_len > 0 && !read_all(msg, msg_len))
        die("connection lost before the payload");
    printf("received type %u reader %u length %u\n", msg_type, msg_reader, msg_len);
    fflush(stdout);
    return 1;
}

static uint32_t error_code(void)
{
    uint32_t code;
    if (msg_len < 4)
        die("short Error message");
    memcpy(&code, msg, 4);
    return ntohl(code);
}

static void answer_apdu(void)
{
    static unsigned char response[MAX_MSG];
    int response_len = sizeof(response);
    VReader *reader = vreader_get_reader_by_id(msg_reader);
    VReaderStatus status;

    if (reader == NULL) {
        uint32_t code = htonl(VSC_GENERAL_ERROR);
        send_msg(VSC_Error, msg_reader, &code, sizeof(code));
        return;
    }
    status = vreader_xfr_bytes(reader, msg, (int)msg_len, response, &response_len);
    vreader_free(reader);
    if (status == VREADER_OK) {
        send_msg(VSC_APDU, msg_reader, response, (uint32_t)response_len);
    } else {
        uint32_t code = htonl(VSC_GENERAL_ERROR);
        send_msg(VSC_Error, msg_reader, &code, sizeof(code));
    }
}

/* Handles one message that arrived while nothing was being waited for. */
static void handle_msg(void)
{
    switch (msg_type) {
    case VSC_APDU:
        answer_apdu();
        break;
    case VSC_Flush:
        send_msg(VSC_FlushComplete, msg_reader, NULL, 0);
        break;
    case VSC_Error:
        printf("host acknowledged reader %u with code %u\n", msg_reader, error_code());
        fflush(stdout);
        break;
    case VSC_Init:
        break;
    default:
        fprintf(stderr, "cac_client: unexpected message type %u\n", msg_type);
        exit(3);
    }
}

/* Waits for the host's Error (acknowledgement) message, answering APDUs meanwhile. */
static uint32_t wait_ack(void)
{
    for (;;) {
        if (!recv_msg())
            die("host closed the connection while we waited for an acknowledgement");
        if (msg_type == VSC_Error)
            return error_code();
        handle_msg();
    }
}

static void handle_event(VEvent *event)
{
    unsigned char atr[MAX_ATR];
    int atr_len = sizeof(atr);
    vreader_id_t id = vreader_get_id(event->reader);

    switch (event->type) {
    case VEVENT_READER_INSERT: {
        const char *name = vreader_get_name(event->reader);
        uint32_t code;
        send_msg(VSC_ReaderAdd, VSCARD_UNDEFINED_READER_ID, name, (uint32_t)strlen(name));
        code = wait_ack();
        if (code != VSC_SUCCESS) {
            printf("host refused reader %s: code %u\n", name, code);
            break;
        }
        vreader_set_id(event->reader, msg_reader);
        printf("reader %s added as id %u\n", name, msg_reader);
        break;
    }
    case VEVENT_READER_REMOVE:
        if (id != VSCARD_UNDEFINED_READER_ID)
            send_msg(VSC_ReaderRemove, id, NULL, 0);
        break;
    case VEVENT_CARD_INSERT:
        if (id == VSCARD_UNDEFINED_READER_ID)
            break;
        vreader_power_on(event->reader, atr, &atr_len);
        send_msg(VSC_ATR, id, atr, (uint32_t)atr_len);
        break;
    case VEVENT_CARD_REMOVE:
        if (id != VSCARD_UNDEFINED_READER_ID)
            send_msg(VSC_CardRemove, id, NULL, 0);
        break;
    default:
        break;
    }
    fflush(stdout);
}

static int connect_to(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    int fd = -1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        die("getaddrinfo failed");
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        die("cannot connect");
    return fd;
}

int main(int argc, char **argv)
{
    char *args;
    VCardEmulOptions *options;
    struct {
        uint32_t magic, version, capabilities[1];
    } init;

    if (argc != 4) {
        fprintf(stderr, "usage: %s NSSDB_DIR HOST PORT\n", argv[0]);
        return 4;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    args = g_strdup_printf("db=\"sql:%s\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
                           argv[1]);
    options = vcard_emul_options(args);
    if (options == NULL)
        die("bad emulator options");
    if (vcard_emul_init(options) != VCARD_EMUL_OK)
        die("vcard_emul_init failed (NSS database or certificates missing?)");

    sock = connect_to(argv[2], argv[3]);

    /* The magic goes as its four bytes "VSCD", the rest in network order. */
    init.magic = VSCARD_MAGIC;
    init.version = htonl(VSCARD_VERSION);
    init.capabilities[0] = 0;
    send_msg(VSC_Init, 0, &init, sizeof(init));
    for (;;) {
        if (!recv_msg())
            die("host closed the connection before its Init");
        if (msg_type == VSC_Init)
            break;
        handle_msg();
    }
    if (msg_len < 12 || memcmp(msg, "VSCD", 4) != 0)
        die("bad Init from the host");
    printf("host Init: version %u, %u capability word(s)\n",
           ntohl(((uint32_t *)msg)[1]), (msg_len - 8) / 4);

    /* Like vscclient: remove whatever reader 0 an earlier run left behind. */
    send_msg(VSC_ReaderRemove, VSCARD_MINIMAL_READER_ID, NULL, 0);
    printf("ReaderRemove 0 acknowledged with %u\n", wait_ack());

    for (;;) {
        struct pollfd pfd = { .fd = sock, .events = POLLIN };
        VEvent *event;

        while ((event = vevent_get_next_vevent()) != NULL) {
            handle_event(event);
            vevent_delete(event);
        }
        if (poll(&pfd, 1, 50) < 0 && errno != EINTR)
            die("poll failed");
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!recv_msg()) {
                printf("host closed the connection\n");
                break;
            }
            handle_msg();
        }
    }
    close(sock);
    return 0;
}

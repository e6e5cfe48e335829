/* mdhunt: scheduled Microsoft Defender hunting; see cli.c. */
#include "mdhunt/cli.h"

int main(int argc, char **argv)
{
    return md_cli_main(argc, argv);
}
